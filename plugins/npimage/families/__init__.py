"""Families (#18): suggest a product's family from its images, flag misfiled products.

- `neighbours`: the family space (centred PCA of the stored feature vectors) and an exact,
  blocked top-k search in it;
- `predict`: similarity-weighted votes, calibration by leave-one-product-out, misfiled flag;
- `stage`: the run stage over a run folder's files (full and incremental);
- `evaluate`, `grocery`: leave-one-product-out and planted misfiles on the grocery photos.
"""
