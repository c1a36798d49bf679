from continual.cli import main

raise SystemExit(main())
