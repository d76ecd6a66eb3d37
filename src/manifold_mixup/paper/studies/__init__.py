"""The paper's studies, composed from library calls: depth (Table 1, Figures 2-3), ConfMix
(Table 2) and the spiral boundaries (Figure 1). Each module registers its study once, as
``STUDY`` (see ``protocol``); ``studies()`` finds them all, and the command line makes one
subcommand of each."""

from .protocol import Flag, Study, studies

__all__ = ["Flag", "Study", "studies"]
