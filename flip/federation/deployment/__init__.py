"""A real federation on Flower's deployment runtime: certificates, the supervised SuperLink
(`flip server`) and SuperNodes (`flip site`), the site's warm ClientApp worker, and the runner
that submits a run through the Control API (`flip run ... federation=deployment`)."""
