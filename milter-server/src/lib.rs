//! Not built yet: see the workspace README.
