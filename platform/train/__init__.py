"""Training: typed experiment config, missing-modality simulation, metrics, DeepSpeed setup, the
Ray Data input pipeline and the Ray Train worker loop / driver (see docs in each module)."""
