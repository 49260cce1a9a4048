"""``python -m hybridrnn`` (also what ``torchrun -m hybridrnn`` runs)."""
from hybridrnn.cli import main

if __name__ == "__main__":
    main()
