"""What we do with a trained classifier: look inside it (filters, feature maps,
occlusion, saliency, class activation maps) and attack it. Each module computes arrays; npcnn.plots draws
them."""
from .features import conv_layers, feature_maps, filters
from .occlusion import OcclusionResult, occlusion
from .feature_occlusion import FeatureOcclusion, feature_occlusion, project_feature_map, strongest_channels
from .saliency import integrated_gradients, saliency, smoothgrad
from .channel_images import CHANNEL, ChannelImages, ChannelProbe, visualize_channels
from .channels import AblationResult, TopActivations, channel_ablation, receptive_field, top_activations
from .embedding import embed, knn_accuracy, penultimate
from .cam import (Explanation, GradCam, cam_layers, deconvolution, explain, grad_cam, guided_backprop,
                  guided_grad_cam)
from .attacks import AttackResult, class_images, fgsm, learn_noise, pgd, robustness_curve, targeted, transfer_noise
