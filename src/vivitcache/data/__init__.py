"""Videos in: decode (PyAV, streaming), frame sampling, preprocessing, annotations, synthetic data, stage-1 clips.

Modules (import what you need; `sampling` and `annotations` do not import torch):

- `decode`: `VideoDecodeError`, `probe_video`, `frame_times`, `sample_times`, `iter_frames`, `read_frames`
- `sampling`: `segment_indices` (training), `view_indices` (evaluation)
- `transforms`: `Preprocess` (timm eval convention)
- `annotations`: `load_annotations`, `VideoRecord`, `VideoDataset`, `AnnotationError`
- `synth`: `make_synth_dataset`, `CLASS_NAMES`
- `clips`: `VideoClipDataset`
"""
