"""K-Net data: importing this module registers the dataset mappers and the datasets."""
