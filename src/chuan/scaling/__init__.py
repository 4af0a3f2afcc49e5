"""Scaling laws: sweeps of `chuan pretrain` runs over model sizes x budgets (`sweep`), and
fits of L(C) = a*C^b + L_inf to them (`fit`). A room above `train` and `eval`."""
