"""Reports of a fit: paper-ready HTML, markdown and LaTeX.

Modules:

- :mod:`~caltars_bayes.report.build`: :func:`build_report` collects a fit's sections and
  headline into a :class:`Report`;
- :mod:`~caltars_bayes.report.document`: :class:`Report` (rendering and writing),
  :func:`render`, ``FORMATS``, ``SUFFIX``, :func:`figure_dir`;
- :mod:`~caltars_bayes.report.elements`: APA numbers, tables, figures, sections, the report's
  content as the renderers read it;
- :mod:`~caltars_bayes.report.sections_fit`: the data and design, and convergence sections;
- :mod:`~caltars_bayes.report.sections_results`: the structure, reliability, judges,
  validity, decision-study, model-comparison and posterior-predictive-check sections;
- :mod:`~caltars_bayes.report.borrowed`: priors borrowed from an earlier trial (section,
  methods sentences, headline);
- :mod:`~caltars_bayes.report.methods`: the methods paragraph;
- :mod:`~caltars_bayes.report.plots`: trace and rank plots of flagged parameters, the judges;
- :mod:`~caltars_bayes.report.plots_results`: reliability per scale (posterior against
  classical), standardised loadings, alliance over sessions;
- :mod:`~caltars_bayes.report.plots_data`: the design and missingness map;
- :mod:`~caltars_bayes.report.latex_tables`: LaTeX tables fitted to the page (font size,
  merged intervals, ``longtable`` for long ones);
- :mod:`~caltars_bayes.report.render_html`, :mod:`~caltars_bayes.report.render_markdown`,
  :mod:`~caltars_bayes.report.render_latex`: the three renderings;
- :mod:`~caltars_bayes.report.formats`: the formats and their suffixes;

and the workflows that write folders (what the command line calls):

- :mod:`~caltars_bayes.report.outputs`: :func:`save_fit_directory` (a whole fit
  directory, returning its tables as :class:`FitResults`);
- :mod:`~caltars_bayes.report.workflows`: ``fit_to_directory``, ``report_fit_directory``,
  ``run_check``, ``run_compare``;
- :mod:`~caltars_bayes.report.demo`: ``run_demo``.
"""
