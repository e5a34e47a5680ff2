"""Reports people read: Markdown and PNG plots built from run records (`build`, `plots`) and the tables they share
(`table`). It may import every stage below it (tasks for the experiments' definitions, measure for the estimate)."""
