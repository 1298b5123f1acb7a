//! XDP data plane: loader (aya), maps, AF_XDP sockets. (In progress.)
