"""Models: the NYU ResNet-22 image-wise model, torchvision backbones, weight resolution and fetching.

Submodules (import from them directly; this package itself imports nothing, so checking a config
that names weights does not import torch):
    nyu         NYUTrunk, NYUImageModel, load_nyu_checkpoint, build_nyu_model
    backbones   build_feature_extractor, build_classifier (resnet50, resnet18, squeezenet1_1)
    extractors  the frozen feature extractors of the embed stage
    weights     WeightsSpec, resolve_weights, check_weights_available, WeightsError, the strict loader
    fetch       fetch_weights (copies the published files to a folder or bucket)
"""
