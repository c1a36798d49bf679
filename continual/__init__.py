"""continual: continual-learning experiments for CLIP models.

Kept import-light on purpose: ``continual --help`` must answer without importing torch,
avalanche or mlflow. Import the submodules you need (``continual.run.loop``, ``continual.measure.metrics``).
"""

__version__ = "0.1.0"
