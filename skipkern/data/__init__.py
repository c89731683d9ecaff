"""Data: MNIST-1D (generated offline, the default), CIFAR-10/100 from local python-pickle folders, and
the teacher-student data of the simplified two-hidden-unit model."""
from skipkern.data.base import DATASETS, Dataset, default_cache_dir, load_dataset
from skipkern.data.cifar import load_cifar, write_cifar_folder
from skipkern.data.mnist1d import load_mnist1d
from skipkern.data.teacher_student import (activation_fn, overlap_elimination_coords, teacher_output,
                                           teacher_student)

__all__ = ["Dataset", "DATASETS", "load_dataset", "load_mnist1d", "load_cifar", "write_cifar_folder",
           "teacher_student", "teacher_output", "activation_fn", "overlap_elimination_coords",
           "default_cache_dir"]
