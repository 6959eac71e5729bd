"""Ground truth and rewards: remembered predictions, the join, and the feedback topic."""
