"""continual.figures.drawing: figures drawn in a child process that leaves signals to its parent, is
replaced when it dies, and does not outlive its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from continual.figures.drawing import save_figure

HERE = Path(__file__).parent


def figure_noting_pid(note: str) -> Figure:
    """A small figure; writes the pid of the process that draws it to the file ``note``."""
    Path(note).write_text(str(os.getpid()))
    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def draw(tmp_path: Path, name: str) -> int:
    """Draw one figure; the pid of the process that drew it."""
    note = tmp_path / f"{name}.pid"
    save_figure(tmp_path / f"{name}.png", figure_noting_pid, str(note), dpi=50)
    with Image.open(tmp_path / f"{name}.png") as png:
        assert png.size == (150, 100)  # 3 x 2 inches at 50 dpi
    return int(note.read_text())


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a parent that does not reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_figure_is_drawn_in_another_process_which_later_figures_reuse(tmp_path: Path) -> None:
    first = draw(tmp_path, "first")
    assert first != os.getpid()
    assert draw(tmp_path, "second") == first


def test_the_drawing_process_leaves_sigterm_to_its_parent_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    child = draw(tmp_path, "before")
    os.kill(child, signal.SIGTERM)  # e.g. a cluster's scancel, sent to every process of the job
    time.sleep(0.5)
    assert draw(tmp_path, "after-sigterm") == child  # the parent decides when a run ends
    os.kill(child, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
    for _ in range(100):
        if gone(child):
            break
        time.sleep(0.05)
    replacement = draw(tmp_path, "after-sigkill")  # drawn, by a new process
    assert replacement not in (child, os.getpid())


def test_the_drawing_process_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from test_drawing import figure_noting_pid; "
              "from continual.figures.drawing import save_figure; "
              "save_figure(sys.argv[2] + '/x.png', figure_noting_pid, sys.argv[2] + '/x.pid'); "
              "print('drawn', flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(HERE), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "drawn"
        child = int((tmp_path / "x.pid").read_text())
        assert not gone(child)
        parent.kill()  # SIGKILL: no atexit, no finally
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(child), f"drawing process {child} outlived its killed parent"
    finally:
        parent.kill()
