//! Auth log parsing (filled in by the auth-log work).
