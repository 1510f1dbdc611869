"""Training engines (modules: ``data``, ``students``, ``outcomes``, ``lr_grid``, ``bn_mlp``, ``plots``):
the learning-rate grid of Karakida et al. 2019 (§3.4, Fig. 2) and BN-MLP training of Joudaki et al. 2023
(§6.2, Figs. 6–8), with their data readers. The sweeps that run them are in
:mod:`normfield.experiments.train`."""

# -- data ---------------------------------------------------------------------------------------
from normfield.train.data import Dataset, load_cifar100, load_dataset, load_digits

# -- learning-rate limit from sharpness (Karakida et al. 2019, eq. (23)) -------------------------
from normfield.train.lr_grid import LRGridSettings, eta_theory, log_lrs, lr_grid_cell, summarize_lr_grid
from normfield.train.outcomes import OUTCOMES, classify_run
from normfield.train.students import StudentRun, train_student_plain, train_students

# -- batch norm during training (Joudaki et al. 2023, §6.2) --------------------------------------
from normfield.gram.bn_theory import entropy_at_init_theory
from normfield.train.bn_cells import BNTrainSettings, bn_mlp_cell, init_entropy_cell
from normfield.train.bn_mlp import BNMLP, BNMLPConfig, TrainResult, class_entropy, gram_eigenvalues, train_bn_mlp

# -- figures ------------------------------------------------------------------------------------
from normfield.train.plots import plot_entropy, plot_gram_spectra, plot_loss, plot_lr_grid, plot_sharpness_end

__all__ = [
    "Dataset", "load_dataset", "load_cifar100", "load_digits",
    "StudentRun", "train_students", "train_student_plain", "LRGridSettings", "lr_grid_cell", "summarize_lr_grid",
    "eta_theory", "log_lrs", "OUTCOMES", "classify_run",
    "BNMLP", "BNMLPConfig", "TrainResult", "train_bn_mlp", "class_entropy", "gram_eigenvalues",
    "entropy_at_init_theory", "BNTrainSettings", "bn_mlp_cell", "init_entropy_cell",
    "plot_lr_grid", "plot_sharpness_end", "plot_gram_spectra", "plot_entropy", "plot_loss",
]
