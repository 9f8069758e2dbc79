"""TFDS builders for LIDC-IDRI benchmarks and a synthetic ambiguous set (no TensorFlow needed).

Build: `python -m tfds_lidc.build --dataset=NAME/CONFIG --data_dir=OUT [--manual_dir=IN]`
or `tfds_lidc.build.build('synthetic_lesions/32', data_dir)`.
Read: `tfds.data_source('synthetic_lesions/32', split='train', data_dir=OUT)` (array_record).

Data sets: synthetic_lesions/{32,64,128} (`synthetic_lesions.py`) and
lidc/{knegt_pickle,deepmind_crops,tcia}[_crop64] (`lidc.py`, raw TCIA parsing in `tcia.py`).
HU windowing and DICOM reading for predict mode: `preprocessing.py`.
"""
