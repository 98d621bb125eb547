"""Load what a report is made from: the model, the images, preprocessing and class names."""
