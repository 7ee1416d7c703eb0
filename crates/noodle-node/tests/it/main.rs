//! In-process nodes with a subsystem written here, outside the node's own files: the seam a new
//! subsystem (the memory fabric, agents) plugs into.

mod ping;
