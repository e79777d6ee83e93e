"""A study: plan (options, settings, runs), launch, layout of its folder, report and paired statistics."""
