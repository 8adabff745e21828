"""Training: configuration, optimizer and schedule, the trainer, checkpoints and run folders."""
from groundthink.training.checkpoint import LoadedRun, load_run
from groundthink.training.config import Config, DataConfig, ModelSection, TrainConfig, load_config
from groundthink.training.hooks import TrainerHook, TrainingDiverged
from groundthink.training.trainer import Trainer

__all__ = ["Config", "DataConfig", "ModelSection", "TrainConfig", "load_config", "Trainer", "TrainerHook",
           "TrainingDiverged", "LoadedRun", "load_run"]
