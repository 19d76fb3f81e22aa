"""backdoorlab: data-poisoning backdoor attacks on image classifiers and the defences against them.

The package follows the data path of Milakovic & Mayer (DBSec 2022): poisoned HDF5 variants
(``datasets_gen``) -> victim models (``backdoorlab.models``, ``backdoorlab.train``) -> defences
alone and combined (``backdoorlab.defences``) -> metrics and reports (``backdoorlab.evaluate``,
``backdoorlab.experiments``). Heavy numeric work runs in the native core (``backdoorlab.native``).
"""

__version__ = "0.1.0"
