//! Greylisting milter: not built yet, see the workspace README.
