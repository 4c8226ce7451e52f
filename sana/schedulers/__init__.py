"""Our samplers, one module each, with diffusers' arithmetic for the configurations SANA's released models use:
flow DPM-Solver++ (`flow_dpm`), flow-matching Euler with a shift and per-token timesteps (`flow_euler`), and SCM in
TrigFlow time for SANA-Sprint (`scm`). `build(cls, config)` gives ours, or diffusers' class (imported only then)
where a scheduler_config asks for something ours does not implement. `sana.sampling.make_scheduler` is the entry.
"""

from .base import Scheduler, SchedulerConfig, SchedulerOutput, build, randn_like_diffusers
from .flow_dpm import FlowDPMSolver
from .flow_euler import FlowEuler
from .scm import SCMSampler

__all__ = ["Scheduler", "SchedulerConfig", "SchedulerOutput", "build", "randn_like_diffusers", "FlowDPMSolver",
           "FlowEuler", "SCMSampler"]
