"""Training: configuration, the optimizer step, the trainer, parallelism, checkpoints and run folders
(docs/architecture.md says which file does what)."""
from groundthink.training.checkpoint import LoadedRun, load_run
from groundthink.training.config import Config, DataConfig, ModelSection, TrainConfig, load_config
from groundthink.training.hooks import TrainerHook, TrainingDiverged, TrainingState
from groundthink.training.trainer import Trainer

__all__ = ["Config", "DataConfig", "ModelSection", "TrainConfig", "load_config", "Trainer", "TrainerHook",
           "TrainingState", "TrainingDiverged", "LoadedRun", "load_run"]
