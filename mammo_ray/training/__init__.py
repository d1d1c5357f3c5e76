"""Fine-tuning building blocks: splits, metrics, augmentation, models, Ray Data inputs, the train loop.

Everything except `loop` and `data` is plain torch / numpy and testable without Ray; the stage that
puts them together on Ray Train is `mammo_ray.stages.finetune`.
"""
