"""The demo (``make demo``): the method on scikit-image scenes with a tiny prior that knows them.

* ``scenes``: the 64 x 64 demo scenes, the degraded dataset and its per-degradation split;
* ``prior``: the tiny text-to-image prior (a stand-in for Stable Diffusion), its training
  script and the packed weights it ships as;
* ``report``: the tables, pictures and loss curves of ``demo_output/report.md``;
* ``run``: the orchestration ``python -m textualdeg.demo`` runs.
"""
