//! Sans-IO WAL decoder (placeholder; being written).
