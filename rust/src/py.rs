//! PyO3 glue (TODO).
