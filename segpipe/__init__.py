"""segpipe: the small library shared by the pipeline stages in stages/."""
