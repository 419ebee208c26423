"""darkfield-nb: uncertainty-guided synthesis of X-ray dark-field chest radiographs.

A thin library under a sequence of teaching notebooks. Modules, from the bottom of the
one-way data flow up (nothing imports a module above it):

``io``, ``labels``, ``hardware``   files, mask labels, device selection
``physics``                         simulated paired data (3-D phantom, CT projector)
``data``                            the paired-data folder contract, splits, transforms
``models``, ``losses``              progressive U-Net GAN, generalized-Gaussian NLL
``train``, ``checkpoint``           stage-wise training with frozen earlier stages
``uncertainty``, ``metrics``        GGD moments, MC dropout, image metrics
``calibration``, ``ood``            uncertainty analysis
``viz``, ``widgets``, ``cli``       pictures and front ends
"""

__version__ = "0.1.0"
