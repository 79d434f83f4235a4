"""Ray plumbing: connecting (local or address, token auth), resource plans -> placement groups."""
from cluster.connect import ClusterError, connect  # noqa: F401
from cluster.plan import (ResourcePlan, actor_options, all_cores, make_placement_group, plan_resources,  # noqa: F401
                          release_group, require_single, shares, torch_threads)
