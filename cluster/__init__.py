"""Ray plumbing: connecting (local or address, token auth), resource plans -> placement groups."""
from cluster.connect import ClusterError, connect  # noqa: F401
from cluster.plan import ResourcePlan, actor_options, make_placement_group, plan_resources, require_single, shares  # noqa: F401
