//! `ficus import`: config generated from a legacy service's own description, printed for a
//! person to review and paste. Nothing here runs in the gateway.

pub mod wsdl;
