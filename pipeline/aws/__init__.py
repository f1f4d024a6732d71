"""AWS side of the pipeline: clients, snapshots, AMIs, the stack and the rollout."""
