"""Post-training: SFT data and masking, LoRA/PEFT, and (later) reward models, DPO, PPO, GRPO."""
