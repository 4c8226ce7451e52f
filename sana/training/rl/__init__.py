"""Reward fine-tuning in the Sol-RL recipe: DiffusionNFT on rollouts explored cheaply, then regenerated in full.

`config` (the run's settings; no torch), `prompts` (text / JSONL files and the shapes grammar), `rewards` (the
reward interface, the built-in rewards and `file.py:function` plugins), `reward_models` (CLIP and PickScore
weights: registry, resolution, download), `objective` (the DiffusionNFT formulas), `rollout` (sampling, best /
worst seed selection, the inference copies of the policy), `log` (rewards.csv, reward.png, sample grids) and
`loop` (`RLTrainer`, on the supervised trainer's model, checkpoint and export machinery).
"""
