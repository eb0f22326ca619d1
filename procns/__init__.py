"""Process and namespace helpers that Python 3.11 lacks, below every other package.

``gtp_util``, ``sctp_repair`` and ``criu_ext`` all stand on this package, and it
stands on nothing of theirs (only the standard library):

* :mod:`procns.syscalls`: ``setns``, ``unshare``, ``pidfd_getfd`` through libc;
* :mod:`procns.netns`: naming a network namespace and running code inside one;
* :mod:`procns.fds`: taking a copy of another process's file descriptor;
* :mod:`procns.caps`: the caller's effective capabilities;
* :mod:`procns.imports`: a package's submodules without its ``__init__`` (start-up time);
* :mod:`procns.files`: reading untrusted files (regular files only, no links, size
  caps) and writing without following planted links.
"""
