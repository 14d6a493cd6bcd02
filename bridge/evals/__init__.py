"""Base vs fine-tuned samples: when a supervised job succeeds, a few conversations of its
validation file (else its training file) are put to the base model and to the fine-tuned
model, and the answers logged side by side in a W&B table (opt-in: ``FTBRIDGE_EVAL_SAMPLES``).

``samples`` is pure (prompts from a JSONL file, scores, the table); ``sampler`` makes the
bounded chat calls and keeps the once-per-job rule.
"""
