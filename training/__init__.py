"""Train the thesis' models and rerun its studies (section 4.2; SPEC section 6).

``equifast.training`` is a separate, optional part of equifast: recipes with the settings
of the thesis' appendix tables 1 and 2, data sets (MNIST6 and its rotated variants on MNIST
and Fashion-MNIST, CIFAR-10 with augmentations), a resumable single-process trainer, the
same trainer data-parallel on Ray Train, and studies that train every setting and seed,
measure the checkpoints with :func:`equifast.measure` and draw the figures.

Example:
    >>> from equifast.training import get_recipe, train
    >>> recipe = get_recipe("cnn7-fmnist6", epochs=2, train_subset=2000)
    >>> result = train(recipe, "runs/cnn7-fmnist6")  # doctest: +SKIP
    >>> result.test_acc  # doctest: +SKIP
"""
from .data import (AUGMENTATIONS, DATASETS, KEPT_CLASSES, REMOVED_CLASSES, build_dataset,
                   measure_images)
from .models import CNN7, ResNet, WideResNet, build_model, cnn7, resnet44, wrn40
from .recipes import RECIPES, Recipe, get_recipe, list_recipes
from .studies import STUDIES, Study, get_study, measure_study, plot_study, run_study
from .trainer import TrainingDivergedError, TrainResult, evaluate, load_model, train

__all__ = [
    "AUGMENTATIONS", "DATASETS", "KEPT_CLASSES", "REMOVED_CLASSES", "build_dataset",
    "measure_images", "CNN7", "ResNet", "WideResNet", "build_model", "cnn7", "resnet44", "wrn40",
    "RECIPES", "Recipe",
    "get_recipe", "list_recipes", "STUDIES", "Study", "get_study", "measure_study", "plot_study",
    "run_study", "TrainResult", "TrainingDivergedError", "evaluate", "load_model", "train", "train_ray",
]


def train_ray(*args, **kwargs):
    """Lazy alias of :func:`equifast.training.ray_train.train_ray` (imports Ray on use)."""
    from .ray_train import train_ray as _train_ray
    return _train_ray(*args, **kwargs)
