"""darkfield-nb: uncertainty-guided synthesis of X-ray dark-field chest radiographs.

A thin library under a sequence of teaching notebooks. Modules, from the bottom of the
one-way data flow up (nothing imports a module above it):

``atomic``, ``io``, ``contract``    atomic writes; image codecs; the paired-folder contract
``ggd``, ``labels``, ``hardware``   generalized-Gaussian math, mask labels, device selection
``physics``                         simulated paired data (3-D phantom, framing, display, CT)
``data``                            datasets, validation, transforms
``models``, ``losses``              progressive U-Net GAN, generalized-Gaussian NLL
``train``, ``checkpoint``           stage-wise training with frozen earlier stages
``uncertainty``, ``metrics``        MC dropout, image metrics
``calibration``, ``epistemic``      calibration, recalibration, risk control; OOD designs
``ood``, ``evaluation``             device flagging, stage tables
``inference``, ``synthesis``        geometry-aware batch synthesis (``predict``)
``severity``                        the disease-severity study
``viz``, ``panels``, ``widgets``    pictures and the uncertainty-threshold explorer
``ablation``, ``cli``               papermill ablation grids, the command line
"""

__version__ = "0.1.0"
