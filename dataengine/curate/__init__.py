"""Curation before captioning: model-free filters, perceptual hashes and clip embeddings.

Everything here works on frames the decode stage already produced (no second decode):

``measure``   the model-free scores (motion, black/blank/fade, frozen, flash, blur, borders)
``ocr``       burned-in text: a real detector (RapidOCR's PP-OCR det model, installed with its wheel)
``dedup``     the exact and near-duplicate index the runner keeps
``embed``     clip embeddings (clip_emb.npy): a model-free descriptor by default, a CLIP/SigLIP tower on GPUs
``learned``   learned scorers as plugins: an aesthetic head on CLIP features, caption-to-clip match
``hashes``    exact digests and 64-bit perceptual hashes of frames
``filters``   the typed filter configs (``dataengine.stages.filter.FilterStage`` runs them)
"""
