"""Models: the NYU ResNet-22 image-wise model, torchvision backbones, weight resolution and fetching.

Submodules (import from them directly; this package itself imports nothing, so checking a config
that names weights does not import torch):
    nyu                NYUTrunk, NYUImageModel, load_nyu_checkpoint, build_nyu_model
    backbones          build_feature_extractor, build_classifier (resnet50, resnet18, squeezenet1_1)
    catalogue          the extractors (family, member, dimension), weights specs, transforms and ids of a section
    extractors         the frozen feature extractors of the embed stage
    weights            WeightsSpec, WeightsError, sha256_hex (what a study names, and its weights_id)
    weights_catalogue  the published files (NYU, torchvision), their URLs and the hints to fetch them
    weights_resolver   resolve_weights, weights_id, check_weights_available, ResolvedWeights
    weight_loading     seeded_init, load_state_dict_strict, the safe unpickler
    fetch              fetch_weights (copies the published files to a folder or bucket)
"""
