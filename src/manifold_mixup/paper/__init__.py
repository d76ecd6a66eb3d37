"""The paper's kit: what reproduces and extends *On Manifold Mixup for Deep Learning*.

Toy problems with an exact Bayes classifier and the MMLB (``toy``), the vectorised trainer of many
small MLPs (``ensemble``), the paper's models (``models``), image data sets (``data``,
``fashion_mnist``), statistics and plots (``stats``, ``plots``), the study runner (``files``:
atomic files and manifests; ``store``: the resumable shard store; ``threads``: thread fitting;
``executors``: local and Ray), the studies (``studies``) and the command line (``cli``).

The kit imports the library (``manifold_mixup``: the mixer, mixing primitives, policies, the
reference trainer); the library never imports the kit.
"""
