import sys, torch
from PIL import Image
from transformers import AutoProcessor, Idefics2ForConditionalGeneration
m=sys.argv[1]
proc=AutoProcessor.from_pretrained(m); model=Idefics2ForConditionalGeneration.from_pretrained(m).eval()
proc.image_processor.do_image_splitting=False
outs=[]
with torch.no_grad():
  for p in sys.argv[2:]:
    b=proc.image_processor([[Image.open(p).convert('RGB')]],return_tensors='pt')
    pv=b['pixel_values'][0]; pam=b['pixel_attention_mask'][0]
    print(p, pv.shape, pam.shape, pam.float().mean().item(), 'pixel std', pv.std().item())
    h=model.model.vision_model(pixel_values=pv, patch_attention_mask=None).last_hidden_state
    c=model.model.connector.modality_projection(h)
    pr=model.model.connector.perceiver_resampler
    lat=pr.latents.unsqueeze(0)
    l0=pr.layers[0]
    ln=l0.input_latents_norm(lat); cn=l0.input_context_norm(c)
    print('  vision h rms %.3f  ctx rms %.4f'%(h.pow(2).mean().sqrt(), c.pow(2).mean().sqrt()))
    outs.append((h,c,cn))
h0,c0,n0=outs[0];h1,c1,n1=outs[1]
n=min(h0.shape[1],h1.shape[1])
print('rel diff vision %.3f ctx %.3f ctxnorm %.3f'%((h0[:, :n]-h1[:, :n]).norm()/h0[:, :n].norm(),(c0[:, :n]-c1[:, :n]).norm()/c0[:, :n].norm(),(n0[:, :n]-n1[:, :n]).norm()/n0[:, :n].norm()))
# within-image spread of ctx across patches
print('ctx spread across patches %.4f'%((c0-c0.mean(1,keepdim=True)).norm()/c0.norm()))
print('ctx mean vector norm vs per-patch %.3f'%(c0.mean(1).norm()/c0.norm(dim=-1).mean()))
with torch.no_grad():
    for (h,c,cn) in outs:
        lat=pr.latents.unsqueeze(0)
        l0=pr.layers[0]
        ln=l0.input_latents_norm(lat)
        at=l0.self_attn
        kv=torch.cat([cn,ln],1)
        q=at.q_proj(ln).view(1,16,at.num_heads,at.head_dim).transpose(1,2)
        k=at.k_proj(kv).view(1,kv.shape[1],-1,at.head_dim).transpose(1,2)
        v=at.v_proj(kv).view(1,kv.shape[1],-1,at.head_dim).transpose(1,2)
        rep=at.num_heads//k.shape[1]
        k=k.repeat_interleave(rep,1); v=v.repeat_interleave(rep,1)
        s=(q@k.transpose(-1,-2))/at.head_dim**0.5
        w=s.softmax(-1)
        nctx=cn.shape[1]
        print('attn mass on context %.3f  scores ctx mean %.2f  lat mean %.2f'%(w[...,:nctx].sum(-1).mean(), s[...,:nctx].mean(), s[...,nctx:].mean()))
        o=(w@v).transpose(1,2).reshape(1,16,-1); o=at.o_proj(o)
        print('  attn out rms %.4f vs latents rms %.4f'%(o.pow(2).mean().sqrt(), lat.pow(2).mean().sqrt()))
        o_ctx=(w[...,:nctx]@v[...,:nctx,:])
        print('  v ctx rms %.4f  v lat rms %.4f'%(v[...,:nctx,:].pow(2).mean().sqrt(), v[...,nctx:,:].pow(2).mean().sqrt()))
