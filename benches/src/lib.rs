//! Load-generation library shared by the storm benchmark and the end-to-end tests.
