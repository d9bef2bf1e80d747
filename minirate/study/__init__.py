"""The method comparison, measured: one module per study, run by `python -m minirate.study`.

    memory_time.py    step time, kept and peak memory, MACs and memory accesses against T
    gradients.py      each method's gradient against BPTT's (sltt, ottt: on the same per-step
                      loss), and the time-averaging limit
    firing.py         firing rate of every LIF layer at every step of a trained network
    design_space.py   truncation window K x local blocks N: accuracy, memory, costs, time
    curves.py         training curves of runs of train.py (their metrics.jsonl), overlaid
    plots.py          their figures;  common.py  inputs (images or event frames), method specs,
                      outputs, CLI pieces
    __main__.py       the command line
"""
from .curves import read_metrics, training_curves
from .design_space import design_space
from .firing import firing_rates
from .gradients import LIMIT, gradient_alignment, time_average_limit, weight_depths
from .memory_time import memory_time

__all__ = ["design_space", "firing_rates", "gradient_alignment", "memory_time", "LIMIT",
           "read_metrics", "time_average_limit", "training_curves", "weight_depths"]
