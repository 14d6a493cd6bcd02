"""Base vs fine-tuned samples: when a supervised job succeeds, a few conversations of its
validation file (else its training file) are put to the base model and to the fine-tuned
model, and the answers logged side by side in a W&B table (opt-in: ``FTBRIDGE_EVAL_SAMPLES``,
or ``eval_samples`` in a source's or route's table).

``samples`` is pure (prompts from a JSONL file, chat requests and answers, scores, the table);
``bounds`` says which bounds hold for a job (route over source over global); ``sampler`` makes
the bounded chat calls through the source and keeps each answer, so that none is billed twice.
"""
