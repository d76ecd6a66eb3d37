"""The paper's studies, composed from library calls: depth (Table 1, Figures 2-3), ConfMix
(Table 2) and the spiral boundaries (Figure 1)."""
