"""The built-in subscribers as registry components (register key ``logger``).

Only rank 0 builds them, with ``extra_kwargs`` ``experiment_dir``, ``resolved_config`` and ``resume_step``.
"""

from llm_gym.logging_broker.console import Console, ConsoleConfig
from llm_gym.logging_broker.metrics_file import MetricsJsonl, MetricsJsonlConfig
from llm_gym.logging_broker.tensorboard_logger import TensorBoard, TensorBoardConfig
from llm_gym.logging_broker.wandb_logger import WandB, WandBConfig

LOGGERS = {
    "Console": (Console, ConsoleConfig),
    "MetricsJsonl": (MetricsJsonl, MetricsJsonlConfig),
    "TensorBoard": (TensorBoard, TensorBoardConfig),
    "WandB": (WandB, WandBConfig),
}
